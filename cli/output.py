"""The CLI's plain-text tables, sizes and times.

They are defined in `serving.text`, beside `format_versions`, which the demo prints
too (the demo is not part of the CLI, so both import from below).
"""

from serving.text import CUT_MARK, CUT_NOTE, MIN_CUT_WIDTH, WIDTH, human_bytes, short_time, table

__all__ = ["CUT_MARK", "CUT_NOTE", "MIN_CUT_WIDTH", "WIDTH", "human_bytes", "short_time", "table"]
