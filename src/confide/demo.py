"""``make demo``: verify the bundled real quotes and print their claims.

Until the CAS exists this is the main job: it runs the real verifier on the real evidence in
``tests/assets`` at times inside each collateral window.
"""

from __future__ import annotations


def main() -> None:
    print("confide demo: nothing to show yet")


if __name__ == "__main__":
    main()
