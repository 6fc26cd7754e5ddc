#!/usr/bin/env python3
"""Says what a test run that ran out of time was doing, for .ci/run's watchdog.

usage: hang-report.py TEST_LOG [STACKS]

TEST_LOG is the output of `swift test`; STACKS is gdb's `thread apply all bt` or lldb's
`thread backtrace all` of the test process, taken before it was killed. Prints, for each thread
that is inside our code, its innermost frame (what it waits in) and its innermost frames from our
modules and tests, then the tests that started and did not finish: last, so that a log cut to its
beginning and end keeps them. (`swift test` writes the test process's output in chunks, so
TEST_LOG is whole only once that process has ended; the watchdog kills it before this runs.)
"""
import re
import sys

OURS = re.compile(r"Aviary|Shop|Tests|aviary")


def unfinished(log_path):
    running = {}
    with open(log_path, encoding="utf-8", errors="replace") as log:
        for line in log:
            # Another thread's output may run into a line, so events are looked for anywhere in it.
            for started in re.finditer(r'◇ Test "(.*?)" started', line):
                running[started.group(1)] = running.get(started.group(1), 0) + 1
            # "✔ Test "x" passed after", "✘ Test "x" failed after", and for parameterized
            # tests "✔ Test "x" with 4 test cases passed after".
            for ended in re.finditer(r'[✔✘] Test "(.*?)"( with \d+ test cases?)? (passed|failed)', line):
                if running.get(ended.group(1), 0) > 0:
                    running[ended.group(1)] -= 1
    return [name for name, count in running.items() for _ in range(count)]


def threads(stacks_path):
    """Yields (header, frames) per thread, from gdb's or lldb's format."""
    header, frames = None, []
    with open(stacks_path, encoding="utf-8", errors="replace") as stacks:
        for line in stacks:
            text = line.strip()
            if re.match(r"^(\* )?(Thread \d+ |thread #\d+)", text):
                if header is not None:
                    yield header, frames
                header, frames = text, []
            elif header is not None and re.match(r"^(\* )?(#\d+ |frame #\d+)", text):
                frames.append(text)
    if header is not None:
        yield header, frames


def main():
    names = unfinished(sys.argv[1])
    if len(sys.argv) > 2:
        idle = 0
        print("threads of the test process in our code (innermost frame, then our innermost frames):")
        for header, frames in threads(sys.argv[2]):
            ours = [frame for frame in frames if OURS.search(frame)]
            if not ours:
                idle += 1
                continue
            print("  " + header[:160])
            if frames:
                print("      " + frames[0][:200])
            for frame in ours[:3]:
                if frame is not frames[0]:
                    print("      " + frame[:200])
        print(f"({idle} other threads had no frame in our code: event loops, idle pool threads)")
        print()
    # Swift Testing reports every test as started when the run begins and runs them as slots
    # free up, so after a long run this lists the tests still running or not yet run, the ones
    # started last (the ones that held the run) last.
    print(f"tests that started and did not finish: {len(names)}")
    shown = names[-40:]
    if len(names) > len(shown):
        print(f"  ... {len(names) - len(shown)} more before these")
    for name in shown:
        print("  " + name)


if __name__ == "__main__":
    main()
