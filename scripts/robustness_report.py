#!/usr/bin/env python3
"""Run the fault, bad-input, security and load tests and print a short markdown table of what they proved.

    python scripts/robustness_report.py            # everything (about 5 minutes on 2 cores)
    python scripts/robustness_report.py -x         # extra arguments go to pytest

The tests run against the real components (a private MariaDB, moto's S3 server, real FUSE mounts), as
``scripts/test`` runs them; pytest's own output goes to stderr, the table to stdout (ready for the README).
Counts are tests passed / tests run per category; figures come from what the tests record with pytest's
``record_property`` (hostile paths tried, bytes verified, reads under load, peak daemon RSS, …).  A test marked
``xfail`` (a known bug, described in its reason) is counted as run, not passed, and listed under the table.
Exit status: pytest's (0 when nothing failed).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: what runs: whole files, and the relevant tests of the mount's own suites
SELECTION = [
    "tests/test_faults.py",
    "tests/test_security.py",
    "tests/test_mount_faults.py",
    "tests/test_load.py",
    "tests/test_mount.py::test_read_only",
    "tests/test_mount.py::test_hostile_paths_are_not_found",
    "tests/test_mount.py::test_hidden_and_foreign_paths",
    "tests/test_mount.py::test_store_down_gives_eio_and_recovers",
    "tests/test_mount.py::test_database_down_keeps_cached_files_readable",
    "tests/test_mount_cli.py::test_background_mount_keeps_credentials_out_of_sight",
    "tests/test_mount_cli.py::test_umount_clears_a_dead_daemons_mount",
    "tests/test_verify.py",
    "tests/test_cache.py::test_damaged_object_is_dropped_and_read_as_a_miss",
    "tests/test_cache.py::test_damaged_blocks_and_opened_files_are_dropped",
    "tests/test_cache.py::test_a_buffer_changed_before_its_background_write_is_not_cached",
    "tests/test_cache.py::test_kill_9_during_fills_then_every_cache_read_is_correct",
    "tests/test_cache.py::test_a_damaged_block_of_a_part_is_the_only_one_fetched_again",
    "tests/test_reader.py::test_a_stream_is_cached_by_parts_and_a_damaged_block_alone_is_fetched_again",
    "tests/test_stores.py::test_s3_ranged_reads_skip_botocores_pipeline_and_never_show_their_signed_url",
    "tests/test_reader.py::test_a_failed_part_is_retried",
    "tests/test_reader.py::test_a_corrupt_object_read_in_full_fails_and_leaves_nothing_cached",
    "tests/test_reader.py::test_blocks_are_checked_against_the_sums_of_a_verified_read",
    "tests/test_external.py::test_file_reads_are_hash_checked_by_default_and_size_checked_on_request",
]

#: category -> patterns of "module::test name" (a test may count in several rows)
CATEGORIES = {
    "faults survived": [
        r"test_faults::", r"test_mount_faults::test_(kill_9|database|s3)_", r"test_mount::test_(store|database)_down",
        r"test_mount_cli::test_umount_clears"],
    "bad inputs refused": [
        r"test_security::test_(hostile|truncated|corrupted|bad_store|store_location)",
        r"test_mount_faults::test_(hostile_paths|any_key_value|every_listed_name)",
        r"test_mount::test_(hostile_paths|hidden_and_foreign|read_only)"],
    "no one got in": [
        r"test_security::test_(credentials|user_with_select)", r"test_mount_faults::test_(permissions|credentials|select_only)",
        r"test_mount_cli::test_background_mount_keeps_credentials",
        r"test_stores::test_s3_ranged_reads_skip"],
    "corruption caught": [
        r"test_verify::", r"test_cache::test_(damaged|a_buffer_changed|a_damaged_block)",
        r"test_reader::test_(a_corrupt|blocks_are_checked|a_stream_is_cached)",
        r"test_external::test_file_reads_are_hash_checked", r"test_security::test_(truncated|corrupted)"],
    "crashes survived": [r"test_cache::test_kill_9", r"test_mount_faults::test_kill_9", r"test_reader::test_a_failed_part"],
    "load held": [r"test_load::"],
    "nothing lost": [
        r"test_faults::", r"test_security::test_(truncated|corrupted)",
        r"test_mount_faults::test_(kill_9|s3_frozen|database_restarted|any_key_value)", r"test_load::"],
}


@dataclass
class Case:
    module: str
    name: str
    outcome: str                      # passed | failed | xfail | skipped
    seconds: float
    message: str = ""
    properties: dict[str, str] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.module}::{self.name}"


def run_tests(junit: Path, extra: list[str]) -> int:
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-o", "junit_family=xunit1",
               f"--junitxml={junit}", "-q", "-rfEX", *SELECTION, *extra]
    print("$ " + " ".join(command[2:]), file=sys.stderr, flush=True)
    return subprocess.run(command, cwd=ROOT, stdout=sys.stderr, stderr=sys.stderr).returncode


def read_cases(junit: Path) -> list[Case]:
    cases = []
    for element in ET.parse(junit).iter("testcase"):
        module = element.get("classname", "").rsplit(".", 1)[-1]
        outcome, message = "passed", ""
        for child in element:
            if child.tag in ("failure", "error"):
                outcome, message = "failed", child.get("message", "")
            elif child.tag == "skipped":
                kind = child.get("type", "")
                outcome = "xfail" if "xfail" in kind else "skipped"
                message = child.get("message", "")
        properties = {p.get("name", ""): p.get("value", "") for p in element.iter("property")}
        cases.append(Case(module, element.get("name", ""), outcome, float(element.get("time", 0) or 0), message,
                          properties))
    return cases


def number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return 0.0


def total(cases: list[Case], name: str) -> float:
    return sum(number(case.properties[name]) for case in cases if name in case.properties)


def peak(cases: list[Case], name: str) -> float:
    return max((number(case.properties[name]) for case in cases if name in case.properties), default=0.0)


def count(cases: list[Case]) -> str:
    ran = [case for case in cases if case.outcome != "skipped"]
    passed = sum(case.outcome == "passed" for case in ran)
    text = f"{passed} / {len(ran)}"
    notes = []
    if xfail := sum(case.outcome == "xfail" for case in ran):
        notes.append(f"{xfail} known bug{'s' if xfail > 1 else ''}, xfail")
    if failed := sum(case.outcome == "failed" for case in ran):
        notes.append(f"**{failed} failed**")
    if skipped := sum(case.outcome == "skipped" for case in cases):
        notes.append(f"{skipped} skipped")
    return text + (f" ({', '.join(notes)})" if notes else "")


def gib(value: float) -> str:
    return f"{value / (1 << 30):.1f} GiB"


def figures(category: str, cases: list[Case], everything: list[Case]) -> str:
    def counted(pattern: str) -> int:
        return sum(1 for case in everything if re.search(pattern, case.key) and case.outcome == "passed")

    if category == "faults survived":
        parts = []
        if in_flight := peak(cases, "kill9_bytes_in_flight"):
            parts.append(f"daemon `kill -9`ed with {in_flight / (1 << 20):.0f} MiB of cold reads in flight, "
                         "remounted on the same cache")
        if db := peak(cases, "db_outage_eio_seconds"):
            parts.append(f"database down: EIO in {db:.1f} s")
        if s3 := peak(cases, "s3_outage_eio_seconds"):
            parts.append(f"S3 frozen/stopped mid-read: EIO in ≤ {s3:.1f} s (bound {peak(cases, 's3_outage_eio_bound_seconds'):.0f} s)")
        parts.append(f"{counted(r'test_faults::')} library fault scenarios (S3 restart mid-fetch, gc races, "
                     "MariaDB restart, full cache disk)")
        return "; ".join(parts)
    if category == "bad inputs refused":
        hostile_hashes = counted(r"test_security::test_hostile_hash_in_a_row")
        locations = counted(r"test_security::test_bad_store_location")
        mount_paths = counted(r"test_mount::test_hostile_paths_are_not_found")
        return (f"{total(cases, 'hostile_paths'):.0f} hostile paths through the mount "
                f"({total(cases, 'hostile_operations'):.0f} system calls) + {mount_paths} in test_mount; "
                f"{total(cases, 'hypothesis_examples'):.0f} random key values round-tripped; "
                f"{hostile_hashes} hostile hashes, {locations} bad store locations; damaged objects and cache files "
                "detected")
    if category == "no one got in":
        return (f"{total(cases, 'access_refusals'):.0f} accesses refused (other uids, modes, ungranted schemas); "
                f"secrets searched in {total(cases, 'secret_places_checked'):.0f} places of the mount "
                "(log, files, xattrs, cmdline, ps) and in the library's logs, errors and reprs: never found")
    if category == "corruption caught":
        return ("objects damaged in the store (file and S3, djfs and DataJoint-style MD5 objects, small and large "
                "through the mount): an error naming the store, EIO and a log line through the mount, nothing "
                "cached; cache files with a flipped bit, a zeroed block, a damaged table, torn or empty: dropped "
                "and fetched again")
    if category == "crashes survived":
        return ("processes `kill -9`ed at random moments of their cache fills (then damaged files on top): every "
                "cache read is the object or a miss; a part's connection dropped mid-body: retried")
    if category == "load held":
        if not any("load_reads" in case.properties for case in cases):
            return "no figures (the load test did not run to the end)"
        case = next(case for case in cases if "load_reads" in case.properties)
        p = case.properties
        return (f"{p.get('load_readers')} readers × {p.get('load_seconds')} s over {p.get('load_files')} files "
                f"({p.get('load_data_mib')} MiB on S3): {number(p.get('load_reads', '0')):,.0f} reads, "
                f"{gib(number(p.get('load_bytes_verified', '0')))} verified, {p.get('load_errors')} errors; "
                f"daemon RSS peak {p.get('load_peak_rss_mib')} MiB (middle/last third "
                f"{p.get('load_rss_middle_last_mib')} MiB); cache peak {p.get('load_cache_peak_mib')} MiB vs limit "
                f"{p.get('load_cache_limit_mib')} MiB, {p.get('load_cache_evicted_objects')} objects evicted")
    if category == "nothing lost":
        verified = total(cases, "bytes_verified") + total(cases, "load_bytes_verified")
        return (f"{gib(verified)} read back and compared with `fetch`; "
                f"{total(cases, 'cache_files_verified'):.0f} cache files checked against their hash or stored "
                "range after crashes and outages; no row without its object after restarts and gc races")
    return ""


def table(cases: list[Case]) -> str:
    lines = ["| robustness | tests passed | what was tried |", "|---|---|---|"]
    for category, patterns in CATEGORIES.items():
        members = [case for case in cases if any(re.search(pattern, case.key) for pattern in patterns)]
        lines.append(f"| {category} | {count(members)} | {figures(category, members, cases)} |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="djfs-robustness-") as directory:
        junit = Path(directory) / "robustness.xml"
        status = run_tests(junit, argv)
        if not junit.exists():
            print("pytest wrote no report; see its output above", file=sys.stderr)
            return status or 1
        cases = read_cases(junit)
    elapsed = time.monotonic() - started
    print(table(cases))
    print()
    ran = [case for case in cases if case.outcome != "skipped"]
    print(f"{sum(c.outcome == 'passed' for c in ran)} of {len(ran)} tests passed in {elapsed / 60:.1f} min "
          f"({os.cpu_count()} CPUs).")
    for case in cases:
        if case.outcome == "xfail":
            print(f"- known bug, `{case.key}`: {case.message.strip()}")
        elif case.outcome == "failed":
            print(f"- **failed**, `{case.key}`: {case.message.strip()[:300]}")
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
