"""The command line every MiniMinds tool shares: telling local paths from Hub ids, with nearest-name suggestions."""
