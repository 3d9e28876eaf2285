"""The compiled extension (Rust, PyO3). Use the functions of ``pare`` instead."""

from typing import List, Optional, Tuple

__version__: str

def main(argv: List[str]) -> int: ...
def call(args: List[str], quiet: bool = False) -> Tuple[int, Optional[str], Optional[str]]: ...
