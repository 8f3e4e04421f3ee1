from benchmarks.harness import Bench


def run(bench: Bench) -> None:
    pass
