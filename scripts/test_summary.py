"""The suite's count of GoogleTest cases, from meson's log of its shards: one closing line,
'tests: N passed, N failed, N skipped', as scripts/test prints it last.
    python3 scripts/test_summary.py BUILD_DIR"""
import json
import re
import sys

passed = failed = skipped = 0
with open(f"{sys.argv[1]}/meson-logs/testlog.json") as log:
    for line in log:
        shard = json.loads(line)
        out = shard.get("stdout") or ""
        ran = re.findall(r"^\[==========\] (\d+) tests? from .* ran\.", out, re.M)
        if not ran:
            # A shard that is not GoogleTest (scripts/check_fatbin) counts as one test, by meson's
            # verdict: OK passed, SKIP (exit 77) skipped. A GoogleTest shard without its summary
            # crashed or timed out, and meson failed it.
            verdict = shard.get("result")
            if verdict == "OK":
                passed += 1
            elif verdict == "SKIP":
                skipped += 1
            else:
                failed += 1
            continue
        skipped_here = sum(int(n) for n in re.findall(r"^\[  SKIPPED \] (\d+) tests?, listed below", out, re.M))
        failed_here = sum(int(n) for n in re.findall(r"^\[  FAILED  \] (\d+) tests?, listed below", out, re.M))
        passed += sum(int(n) for n in re.findall(r"^\[  PASSED  \] (\d+) tests?\.", out, re.M))
        failed += failed_here
        skipped += skipped_here
print(f"tests: {passed} passed, {failed} failed, {skipped} skipped")
