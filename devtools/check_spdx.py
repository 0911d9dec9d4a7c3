# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""pre-commit hook: every file given must carry vLLM's SPDX header in its first lines."""

import argparse
import sys

HEADER = "SPDX-License-Identifier: Apache-2.0"


def main(paths: list[str]) -> int:
    missing = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            head = "".join(f.readline() for _ in range(3))
        if HEADER not in head:
            missing.append(path)
    for path in missing:
        print(f"{path}: missing '# {HEADER}' in its first three lines")
    return 1 if missing else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("paths", nargs="*", help="files to check")
    sys.exit(main(parser.parse_args().paths))
