"""``python -m bench.scoring echo BOOTSTRAP PREFIX WAIT_MS MAX_RECORDS PARTITIONS``: the echo
child that :class:`bench.scoring.echo.EchoProcess` starts."""

import sys

from bench.scoring.echo import echo_main

if sys.argv[1:2] != ["echo"]:
    sys.exit("usage: python -m bench.scoring echo BOOTSTRAP PREFIX WAIT_MS MAX_RECORDS "
             "PARTITIONS")
echo_main(sys.argv[2:])
