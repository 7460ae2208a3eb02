"""The targets ``bench/run.py`` checks aistack-tts against (issue 15), in one place.

Most are ratios to a contender or a Twisted floor measured in the same run, so a busy or a
quiet machine moves both sides alike.
"""

from __future__ import annotations

#: Scenario 1: added p50 and gateway CPU per small request, against twisted.web.proxy's.
ADDED_P50_VS_TWISTED = 0.45
CPU_VS_TWISTED = 0.5
#: Scenario 2: MB/s against twisted.web.proxy's and the raw byte-relay floor's.
STREAM_VS_TWISTED = 1.1
STREAM_VS_RELAY = 0.9
#: Scenario 3: added time to first byte (p50) against twisted.web.proxy's.
TTFB_VS_TWISTED = 0.5
#: Scenario 4: RSS growth under a stalled client (worst trial).
RSS_GOAL_MIB = 1
#: Scenario 5: client close -> upstream closed, p99.
CLOSE_P99_GOAL_MS = 2.0
#: Scenario 6: the 503 burst's p99 against a bare twisted.web server answering a fixed 503.
BUSY_VS_BARE_WEB = 1.2
