"""Deterministic stand-ins for the demo tools upstream MiniMind's agent RL data declares (`get_current_time`,
`get_current_weather`, `unit_converter`, `get_exchange_rate`, `translate_text`, `calculate_math`), under the same
names and arguments, so its records run here as they are.

Every answer comes from the small tables below, never from the network or the clock: the same arguments always give
the same JSON text, which is what makes a reward on the final answer checkable and a run repeatable. A question the
tables cannot answer raises ValueError naming what they know; the tool runner turns that into the error message the
policy reads. `calculate_math` is the safe evaluator of `data_process.tools`: nothing is ever passed to `eval`.
"""

import datetime
import json

from data_process.tools import calculator, function_schema

# The one instant every "current" time is read at: time zones shift it by their standard offset (no daylight saving).
NOW_UTC = datetime.datetime(2025, 6, 1, 12, 0)
TIMEZONES = {
    "UTC": 0,
    "Asia/Shanghai": 8,
    "Asia/Tokyo": 9,
    "Asia/Kolkata": 5.5,
    "Europe/London": 0,
    "Europe/Paris": 1,
    "Europe/Moscow": 3,
    "America/New_York": -5,
    "America/Los_Angeles": -8,
    "Australia/Sydney": 10,
}

# English name, Chinese name, temperature in Celsius, condition.
WEATHER = [
    ("Beijing", "北京", 26, "sunny"),
    ("Shanghai", "上海", 24, "cloudy"),
    ("Guangzhou", "广州", 31, "rain"),
    ("Chengdu", "成都", 22, "overcast"),
    ("Hangzhou", "杭州", 25, "light rain"),
    ("Harbin", "哈尔滨", 17, "windy"),
    ("Tokyo", "东京", 21, "cloudy"),
    ("London", "伦敦", 15, "drizzle"),
    ("Paris", "巴黎", 19, "sunny"),
    ("New York", "纽约", 23, "thunderstorms"),
    ("Sydney", "悉尼", 13, "clear"),
    ("Cairo", "开罗", 34, "sunny"),
    ("Moscow", "莫斯科", 16, "overcast"),
    ("Singapore", "新加坡", 30, "humid"),
]

# Each unit's size in its dimension's base unit (metre, kilogram, litre); temperatures are converted apart.
UNIT_SIZES = {
    "length": {"km": 1000.0, "m": 1.0, "cm": 0.01, "mile": 1609.344, "foot": 0.3048, "inch": 0.0254},
    "mass": {"kg": 1.0, "g": 0.001, "pound": 0.45359237, "ounce": 0.028349523125},
    "volume": {"liter": 1.0, "ml": 0.001, "gallon": 3.785411784},
}
TEMPERATURES = ("celsius", "fahrenheit")
UNIT_ALIASES = {
    "kilometer": "km", "kilometers": "km", "公里": "km", "千米": "km",
    "meter": "m", "meters": "m", "米": "m",
    "centimeter": "cm", "centimeters": "cm", "厘米": "cm",
    "miles": "mile", "mi": "mile", "英里": "mile",
    "feet": "foot", "ft": "foot", "英尺": "foot",
    "inches": "inch", "in": "inch", "英寸": "inch",
    "kilogram": "kg", "kilograms": "kg", "千克": "kg", "公斤": "kg",
    "gram": "g", "grams": "g", "克": "g",
    "pounds": "pound", "lb": "pound", "lbs": "pound", "磅": "pound",
    "ounces": "ounce", "oz": "ounce", "盎司": "ounce",
    "liters": "liter", "litre": "liter", "l": "liter", "升": "liter",
    "milliliter": "ml", "milliliters": "ml", "毫升": "ml",
    "gallons": "gallon", "gal": "gallon", "加仑": "gallon",
    "c": "celsius", "°c": "celsius", "摄氏度": "celsius",
    "f": "fahrenheit", "°f": "fahrenheit", "华氏度": "fahrenheit",
}  # fmt: skip

# Units of each currency one US dollar buys, fixed.
PER_DOLLAR = {"USD": 1.0, "CNY": 7.2, "EUR": 0.92, "GBP": 0.79, "JPY": 150.0, "AUD": 1.5, "CAD": 1.36, "HKD": 7.8}

# The same phrase in both languages; translate_text looks a text up on either side.
PHRASES = [
    ("你好世界", "Hello world"),
    ("早上好", "Good morning"),
    ("谢谢你的帮助", "Thank you for your help"),
    ("今天天气很好", "The weather is nice today"),
    ("我喜欢读书", "I like reading"),
    ("生日快乐", "Happy birthday"),
    ("晚安", "Good night"),
    ("这本书很有趣", "This book is interesting"),
    ("我们明天见", "See you tomorrow"),
    ("小猫在睡觉", "The kitten is sleeping"),
]
LANGUAGES = {
    "english": "en", "en": "en", "英文": "en", "英语": "en",
    "chinese": "zh", "zh": "zh", "中文": "zh", "汉语": "zh",
}  # fmt: skip


def as_json(value: dict) -> str:
    return json.dumps(value, ensure_ascii=False)


def get_current_time(timezone: str = "UTC") -> str:
    """Get the current date, time and weekday in a time zone.

    Args:
        timezone: An IANA time zone name, e.g. Asia/Shanghai.
    """
    if timezone not in TIMEZONES:
        raise ValueError(f"unknown time zone {timezone!r}; known: {', '.join(TIMEZONES)}")
    local = NOW_UTC + datetime.timedelta(hours=TIMEZONES[timezone])
    return as_json(
        {
            "timezone": timezone,
            "date": local.date().isoformat(),
            "time": local.strftime("%H:%M"),
            "weekday": local.strftime("%A"),
        }
    )


def get_current_weather(location: str) -> str:
    """Get the current weather in a city: temperature in Celsius and condition.

    Args:
        location: The city, e.g. Paris.
    """
    for english, chinese, temperature, condition in WEATHER:
        if location.strip().casefold() in (english.casefold(), chinese):
            return as_json({"location": english, "temperature_c": temperature, "condition": condition})
    raise ValueError(f"no weather for {location!r}; known: {', '.join(row[0] for row in WEATHER)}")


def canonical_unit(unit: str) -> str:
    name = unit.strip().casefold()
    return UNIT_ALIASES.get(name, name)


def convert(value: float, source: str, target: str) -> float:
    """`value` in `source` units expressed in `target` units; ValueError for unknown or mismatched units."""
    if source in TEMPERATURES and target in TEMPERATURES:
        celsius = value if source == "celsius" else (value - 32) / 1.8
        return celsius if target == "celsius" else celsius * 1.8 + 32
    for sizes in UNIT_SIZES.values():
        if source in sizes and target in sizes:
            return value * sizes[source] / sizes[target]
    known = [unit for sizes in UNIT_SIZES.values() for unit in sizes] + list(TEMPERATURES)
    raise ValueError(f"cannot convert {source!r} to {target!r}; known units: {', '.join(known)}")


def unit_converter(value: float, from_unit: str, to_unit: str) -> str:
    """Convert a quantity between units of length, mass, volume or temperature.

    Args:
        value: The quantity to convert.
        from_unit: The unit it is in, e.g. km.
        to_unit: The unit wanted, e.g. mile.
    """
    source, target = canonical_unit(from_unit), canonical_unit(to_unit)
    result = round(convert(float(value), source, target), 4)
    return as_json({"value": value, "from_unit": source, "to_unit": target, "result": result})


def exchange_rate(source: str, target: str) -> float:
    """Units of `target` one unit of `source` buys, rounded to 4 decimals."""
    source, target = source.strip().upper(), target.strip().upper()
    unknown = [code for code in (source, target) if code not in PER_DOLLAR]
    if unknown:
        raise ValueError(f"unknown currency {unknown[0]!r}; known: {', '.join(PER_DOLLAR)}")
    return round(PER_DOLLAR[target] / PER_DOLLAR[source], 4)


def get_exchange_rate(from_currency: str, to_currency: str) -> str:
    """Get the exchange rate between two currencies: units of to_currency one unit of from_currency buys.

    Args:
        from_currency: The ISO code of the currency sold, e.g. USD.
        to_currency: The ISO code of the currency bought, e.g. CNY.
    """
    rate = exchange_rate(from_currency, to_currency)
    return as_json({"from": from_currency.strip().upper(), "to": to_currency.strip().upper(), "rate": rate})


def translate_text(text: str, target_language: str) -> str:
    """Translate a short phrase between Chinese and English.

    Args:
        text: The phrase to translate.
        target_language: The language wanted: english or chinese.
    """
    language = LANGUAGES.get(target_language.strip().casefold())
    if language is None:
        raise ValueError(f"unknown language {target_language!r}; known: english, chinese")
    phrase = text.strip().rstrip("。.!！").casefold()
    for chinese, english in PHRASES:
        if phrase in (chinese, english.casefold()):
            return as_json({"translated_text": english if language == "en" else chinese})
    raise ValueError(f"no translation of {text!r}; known phrases: {', '.join(english for _, english in PHRASES)}")


def calculate_math(expression: str) -> str:
    """Evaluate an arithmetic expression with + - * / // % ** (or ^) and parentheses.

    Args:
        expression: The expression, e.g. (12 + 30) * 4.
    """
    plain = expression.replace("^", "**").replace("×", "*").replace("÷", "/").replace("（", "(").replace("）", ")")
    return as_json({"result": calculator(plain)})


DEMO_TOOLS = {
    function.__name__: function
    for function in (
        get_current_time,
        get_current_weather,
        unit_converter,
        get_exchange_rate,
        translate_text,
        calculate_math,
    )
}
DEMO_TOOL_SCHEMAS = {name: function_schema(function) for name, function in DEMO_TOOLS.items()}
