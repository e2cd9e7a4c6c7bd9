"""Bad input: defective and adversarial market data, and every CLI command with wrong input.

The case tables here are the single source of truth: tests/test_data_adversarial.py and
tests/test_cli_errors.py parametrize over them and call the same runners.

A case passes when the input is refused with a clear message (one line, no traceback, no bare
pandas/pyarrow text, the expected words in it, a TidelineError) or, for quarantine cases, when the bad
rows are set aside with a reason; CLI cases must also exit non-zero.

    python -m reliability.inputs [--quick]      (from bench/)
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HEADER = "timestamp,symbol,open,high,low,close,volume"
COLS = HEADER.split(",")
MAX_MESSAGE = 600  # a clear message fits on a line or two of a terminal
# text that only a library's internals would print
INTERNAL = ("Traceback", "internal error", "Error tokenizing", "pyarrow.", "pandas.", "C error", "File \"")


def good_rows(n: int = 4, symbols: tuple[str, ...] = ("AAA", "BBB")) -> list[list[str]]:
    """n clean hourly bars per symbol, in file order."""
    return [[f"2024-01-{1 + h // 24:02d} {h % 24:02d}:00:00", s, "10", "11", "9", "10.5", "100"]
            for s in symbols for h in range(n)]


def csv_text(rows: list[list[str]], header: str = HEADER) -> str:
    return header + "\n" + "".join(",".join(r) + "\n" for r in rows)


def _set(row: int, **vals: str) -> Callable[[list[list[str]]], list[list[str]]]:
    def f(rows: list[list[str]]) -> list[list[str]]:
        for col, v in vals.items():
            rows[row - 1][COLS.index(col)] = v
        return rows
    return f


@dataclass
class DataCase:
    id: str
    content: Callable[[], bytes | str]  # what the file holds
    expect: str  # words the message (or, for quarantine, the report) must hold
    name: str = "bars.csv"
    mode: str = "strict"  # strict: must be refused; quarantine: bad rows must be set aside
    clean: int | None = None  # quarantine: rows that must survive
    min_bars: int = 1  # validate_bars(min_bars_per_symbol=)
    min_quality: float = 0.0  # validate_bars(min_quality=): the data-quality refusal (the cycle's default 0.7)
    max_bytes: int | None = None  # load_bars(max_bytes=)
    validation: bool = False  # strict: a ValidationError (after reading), not a DataError from reading


def _rows(mut: Callable[[list[list[str]]], list[list[str]]]) -> Callable[[], str]:
    return lambda: csv_text(mut(good_rows()))


# the defect table of the foundation issue: (id, mutation, code); each is tried strict and quarantined
DEFECTS: list[tuple[str, Callable[[list[list[str]]], list[list[str]]], str, int]] = [
    ("bad_timestamp", _set(3, timestamp="not-a-date"), "unparsable_timestamp", 1),
    ("missing_close", _set(4, close=""), "nan_value", 1),
    ("nan_volume", _set(6, volume="NaN"), "nan_value", 1),
    ("missing_symbol", _set(2, symbol=""), "nan_value", 1),
    ("inf_high", _set(5, high="inf"), "inf_value", 1),
    ("zero_low", _set(7, low="0"), "non_positive_price", 1),
    ("high_below_low", _set(2, high="8.5"), "high_below_low", 1),
    ("open_above_high", _set(8, open="12"), "open_outside_range", 1),
    ("close_below_low", _set(1, close="8"), "close_outside_range", 1),
    ("negative_volume", _set(3, volume="-5"), "negative_volume", 1),
    ("text_in_price", _set(6, open="abc"), "non_numeric", 1),
    ("duplicate", _set(3, timestamp="2024-01-01 01:00:00"), "duplicate_key", 2),
]


def _parquet_bytes() -> bytes:
    from tideline.data import synthetic_market

    buf = io.BytesIO()
    synthetic_market(2, 20).to_parquet(buf, index=False)
    return buf.getvalue()


def _gzip_bomb() -> bytes:
    """~30 MB of valid-looking CSV that compresses to ~100 KB; refused at a 5 MB limit."""
    line = b"2024-01-01 00:00:00,AAA,10,11,9,10.5,100\n"
    return gzip.compress(HEADER.encode() + b"\n" + line * 750_000, 9)


ADVERSARIAL: list[DataCase] = [
    # size and shape
    DataCase("file_over_limit", lambda: csv_text(good_rows(200)), "over the 4.0 KiB input limit", max_bytes=4096),
    DataCase("gzip_bomb", _gzip_bomb, "decompresses to more than the 5.0 MiB", name="bars.csv.gz",
             max_bytes=5 << 20),
    DataCase("one_huge_line", lambda: "x" * 2_000_000, "first line of"),
    DataCase("million_columns", lambda: ",".join(f"c{i}" for i in range(1_000_000)) + "\n1\n", "first line of"),
    DataCase("5000_columns", lambda: ",".join(f"c{i}" for i in range(5000)) + "\n1\n", "5,000 columns"),
    DataCase("huge_field", lambda: csv_text(good_rows()) + "2024-01-02," + "9" * 3_000_000 + "\n",
             "nan_value", validation=True),
    DataCase("semicolons", lambda: csv_text(good_rows()).replace(",", ";"), "separates its columns with semicolons"),
    DataCase("wrong_columns", lambda: "a,b,c\n1,2,3\n", "missing required columns timestamp", validation=True),
    # encodings and file kinds
    DataCase("utf16_bom", lambda: csv_text(good_rows()).encode("utf-16"), "UTF-16"),
    DataCase("utf16le_no_bom", lambda: csv_text(good_rows()).encode("utf-16-le"), "UTF-16"),
    DataCase("utf32", lambda: csv_text(good_rows()).encode("utf-32"), "UTF-32"),
    DataCase("latin1_symbol", lambda: csv_text(_set(2, symbol="ÉTF")(good_rows())).encode("latin-1"),
             "not valid UTF-8"),
    DataCase("binary_garbage", lambda: bytes(range(256)) * 64, "binary"),
    DataCase("parquet_named_csv", _parquet_bytes, "is a Parquet file, not CSV"),
    DataCase("csv_named_parquet", lambda: csv_text(good_rows()), "not a valid Parquet file: it is text",
             name="bars.parquet"),
    DataCase("garbage_parquet", lambda: b"PAR1" + bytes(range(256)) * 4, "not a valid Parquet file",
             name="bars.parquet"),
    DataCase("truncated_parquet", lambda: _parquet_bytes()[:300], "not a valid Parquet file", name="bars.parquet"),
    DataCase("not_gzip", lambda: csv_text(good_rows()), "gzip", name="bars.csv.gz"),
    DataCase("truncated_gzip", lambda: gzip.compress(csv_text(good_rows(500)).encode())[:400], "gzip",
             name="bars.csv.gz"),
    DataCase("empty_file", lambda: b"", "is empty"),
    DataCase("only_header", lambda: HEADER + "\n", "no data rows"),
    DataCase("only_bom", lambda: b"\xef\xbb\xbf", "is empty"),
    DataCase("blank_lines", lambda: "\n\n   \n", "is empty"),
    DataCase("unbalanced_quote", lambda: HEADER + '\n2024-01-01,"AAA,1,1,1,1,1\n2024-01-02,B,1,1,1,1,1\n',
             "not a well-formed CSV"),
    DataCase("unknown_extension", lambda: csv_text(good_rows()), "unknown file type", name="bars.xlsx"),
    # extreme values
    DataCase("price_1e308", _rows(_set(3, open="1e308", high="1e308", low="1e308", close="1e308")),
             "implausible_value (1 row: 3)", validation=True),
    DataCase("price_1e309", _rows(_set(3, high="1e309")), "inf_value (1 row: 3 [high])", validation=True),
    DataCase("minus_inf", _rows(_set(3, low="-inf")), "inf_value (1 row: 3 [low])", validation=True),
    DataCase("volume_1e20", _rows(_set(3, volume="1e20")), "implausible_value (1 row: 3)", validation=True),
    DataCase("nan_strings", _rows(_set(5, open="nan", high="NaN", low="NA", close="null")),
             "nan_value (1 row: 5 [open, high, low, close])", validation=True),
    DataCase("negative_price", _rows(_set(2, open="-10", low="-11")), "non_positive_price (1 row: 2 [open, low])",
             validation=True),
    DataCase("zero_prices", _rows(_set(2, open="0", high="0", low="0", close="0")), "non_positive_price (1 row: 2",
             validation=True),
    DataCase("high_below_low", _rows(_set(4, high="1", low="20")), "high_below_low (1 row: 4)", validation=True),
    DataCase("negative_volume", _rows(_set(6, volume="-1e9")), "negative_volume (1 row: 6)", validation=True),
    DataCase("year_1677", _rows(_set(1, timestamp="1677-01-01 00:00:00")), "unparsable_timestamp (1 row: 1)",
             validation=True),
    DataCase("year_2263", _rows(_set(4, timestamp="2263-01-01")), "unparsable_timestamp (1 row: 4)",
             validation=True),
    DataCase("year_9999", _rows(_set(4, timestamp="9999-12-31T23:59:59")), "unparsable_timestamp (1 row: 4)",
             validation=True),
    DataCase("epoch_int_overflow", _rows(_set(2, timestamp="1" + "0" * 30)), "unparsable_timestamp",
             validation=True),
    DataCase("mixed_epoch_units",
             lambda: csv_text([[str(1704067200 + 3600 * h), "AAA", "10", "11", "9", "10.5", "100"] for h in range(5)]
                              + [["1704067200000000000000", "AAA", "10", "11", "9", "10.5", "100"]]),
             "unparsable_timestamp (1 row: 6)", validation=True),
    DataCase("mixed_timezones_duplicate",  # 02:00+02:00 is 00:00Z: the same bar twice
             lambda: csv_text([["2024-01-01T02:00:00+02:00", "AAA", "10", "11", "9", "10.5", "100"],
                               ["2024-01-01T00:00:00Z", "AAA", "10", "11", "9", "10.5", "100"],
                               ["2024-01-01T01:00:00-00:00", "AAA", "10", "11", "9", "10.5", "100"]]),
             "duplicate_key (2 rows: 1, 2)", validation=True),
    # naive and offset times in one column: each naive one would take the offset of the row before it
    DataCase("mixed_naive_and_offsets",
             lambda: csv_text([["2004-08-19T00:00:00+00:00", "AAA", "10", "11", "9", "10.5", "100"],
                               ["2004-08-20T00:00:00-05:00", "AAA", "10", "11", "9", "10.5", "100"],
                               ["2004-08-23T00:00:00", "AAA", "10", "11", "9", "10.5", "100"]]),
             "mixes time zones in its timestamp column", validation=True),
    DataCase("mixed_naive_and_offsets_quarantine",
             lambda: csv_text([["2004-08-19T00:00:00Z", "AAA", "10", "11", "9", "10.5", "100"],
                               ["2004-08-23 00:00:00", "AAA", "10", "11", "9", "10.5", "100"]]),
             "mixes time zones in its timestamp column", validation=True, mode="strict-even-quarantined"),
    DataCase("close_column_twice", lambda: csv_text(good_rows(), header=HEADER + ",close"),
             "names column close more than once"),
    # well-formed but implausible series (refused by the data-quality score the cycle applies)
    DataCase("split_1_to_50", lambda: csv_text(_series(300, scale_from=(150, 1 / 50))), "jump beyond 30 robust sigmas",
             validation=True, min_quality=0.7),
    DataCase("decimal_slip_one_bar", lambda: csv_text(_series(300, scale_one=(200, 10.0))), "2 jumps beyond",
             validation=True, min_quality=0.7),
    DataCase("frozen_zero_volume", lambda: csv_text(_series(300, freeze=(100, 180))), "in stale stretches",
             validation=True, min_quality=0.7),
    DataCase("constant_price", lambda: csv_text(_series(500, freeze=(1, 500))), "in stale stretches",
             validation=True, min_quality=0.7),
    DataCase("repeated_bars", lambda: csv_text(_series(300, repeat_every=3)), "repeat the previous bar exactly",
             validation=True, min_quality=0.7),
    DataCase("split_quarantined", lambda: csv_text(_series(300, scale_from=(150, 1 / 50))
                                                   + _series(300, symbol="BBB")),
             "low_quality", mode="quarantine", clean=300, min_quality=0.7),
    # too little history
    DataCase("single_row_short_history", lambda: csv_text([["2024-01-01", "AAA", "10", "11", "9", "10.5", "100"]]),
             "short_history (1 row: 1): AAA has 1 bar; at least 50 needed", min_bars=50, validation=True),
    DataCase("one_symbol_without_history",
             lambda: csv_text(good_rows(60, ("AAA", "BBB")) + [["2024-01-01 00:00:00", "NEW", "10", "11", "9", "10.5",
                                                               "100"], ["2024-01-01 01:00:00", "NEW", "10", "11",
                                                                        "9", "10.5", "100"]]),
             "NEW has 2 bars; at least 50 needed", min_bars=50, validation=True),
    DataCase("one_symbol_without_history_quarantined",
             lambda: csv_text(good_rows(60, ("AAA", "BBB")) + [["2024-01-01 00:00:00", "NEW", "10", "11", "9", "10.5",
                                                               "100"]]),
             "short_history", min_bars=50, mode="quarantine", clean=120),
    # good inputs that must just work (a refusal here is a failure)
]
GOOD_INPUTS: list[DataCase] = [
    DataCase("utf8_bom_ok", lambda: b"\xef\xbb\xbf" + csv_text(good_rows()).encode(), "", mode="ok", clean=8),
    DataCase("epoch_ns_text_ok",
             lambda: csv_text([[str(1704067200 * 10**9 + h * 3600 * 10**9), "AAA", "10", "11", "9", "10.5", "100"]
                               for h in range(5)]), "", mode="ok", clean=5),
    DataCase("mixed_timezones_ok",
             lambda: csv_text([["2024-01-01T02:00:00+05:00", "AAA", "10", "11", "9", "10.5", "100"],
                               ["2024-01-01T00:00:00Z", "AAA", "10", "11", "9", "10.5", "100"]]), "", mode="ok", clean=2),
    DataCase("single_row_ok", lambda: csv_text([["2024-01-01", "AAA", "10", "11", "9", "10.5", "100"]]), "",
             mode="ok", clean=1),
    DataCase("random_walk_quality_ok", lambda: csv_text(_series(600) + _series(600, symbol="BBB", seed=2)), "",
             mode="ok", clean=1200, min_quality=0.7),
]


def _series(n: int, *, symbol: str = "AAA", seed: int = 1, scale_from: tuple[int, float] | None = None,
            scale_one: tuple[int, float] | None = None, freeze: tuple[int, int] | None = None,
            repeat_every: int = 0) -> list[list[str]]:
    """n hourly bars of a random walk (1% moves), with one kind of implausibility applied."""
    import numpy as np

    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
    open_ = np.r_[100.0, close[:-1]]
    high = np.maximum(open_, close) * (1 + rng.uniform(0.001, 0.005, n))
    low = np.minimum(open_, close) * (1 - rng.uniform(0.001, 0.005, n))
    vol = rng.integers(1_000, 5_000, n).astype(float)
    px = np.vstack([open_, high, low, close])
    if scale_from:
        px[:, scale_from[0]:] *= scale_from[1]
    if scale_one:
        px[:, scale_one[0]] *= scale_one[1]
    if freeze:
        a, b = freeze
        px[:, a - 1:b] = px[3, a - 2] if a > 1 else 100.0
        vol[a - 1:b] = 0
    if repeat_every:
        for i in range(1, n, repeat_every):
            px[:, i], vol[i] = px[:, i - 1], vol[i - 1]
    t0 = np.datetime64("2024-01-01T00:00")
    return [[str(t0 + np.timedelta64(h, "h")).replace("T", " "), symbol, *(f"{x:.6f}" for x in px[:, h]),
             f"{vol[h]:.0f}"] for h in range(n)]


def data_cases() -> list[DataCase]:
    """Every market-data case: the defect table (strict and quarantine), adversarial inputs, good inputs."""
    out: list[DataCase] = []
    for did, mut, code, n_bad in DEFECTS:
        out.append(DataCase(f"defect_{did}_strict", _rows(mut), f"failed validation: 1 problem: {code} (",
                            validation=True))
        out.append(DataCase(f"defect_{did}_quarantine", _rows(mut), code, mode="quarantine", clean=8 - n_bad))
    return out + ADVERSARIAL + GOOD_INPUTS


def unclear(msg: str) -> str | None:
    """Why a user-facing message is not clear, or None."""
    if not msg.strip():
        return "empty message"
    if "\n" in msg.strip():
        return "more than one line"
    if len(msg) > MAX_MESSAGE:
        return f"{len(msg)} characters long"
    for bad in INTERNAL:
        if bad in msg:
            return f"internal text {bad!r}"
    return None


def run_data_case(case: DataCase, work: Path) -> tuple[bool, str]:
    """(passed, what happened) for one market-data case."""
    from tideline.data import load_bars, validate_bars
    from tideline.errors import DataError, TidelineError, ValidationError

    d = work / case.id
    d.mkdir(parents=True, exist_ok=True)
    path = d / case.name
    body = case.content()
    path.write_bytes(body if isinstance(body, bytes) else body.encode("utf-8"))
    mode = "quarantine" if case.mode in ("quarantine", "ok", "strict-even-quarantined") else "strict"
    try:
        raw = load_bars(path, max_bytes=case.max_bytes)
        rep = validate_bars(raw, mode=mode, min_bars_per_symbol=case.min_bars,  # type: ignore[arg-type]
                            min_quality=case.min_quality)
    except TidelineError as e:
        msg = str(e)
        if not case.mode.startswith("strict"):
            return False, f"refused: {msg}"
        why = unclear(msg)
        if why:
            return False, f"unclear ({why}): {msg[:200]}"
        if not isinstance(e, DataError):
            return False, f"{type(e).__name__}, not a DataError: {msg}"
        if case.validation != isinstance(e, ValidationError):
            return False, f"{type(e).__name__} (validation expected: {case.validation}): {msg}"
        if case.expect not in msg:
            return False, f"message lacks {case.expect!r}: {msg}"
        return True, msg
    except Exception as e:  # noqa: BLE001 - a crash is what this counts
        return False, f"crash {type(e).__name__}: {' '.join(str(e).split())[:200]}"
    if case.mode.startswith("strict"):
        return False, f"accepted ({rep.n_clean} clean rows)"
    if case.clean is not None and rep.n_clean != case.clean:
        return False, f"{rep.n_clean} clean rows, expected {case.clean}"
    if case.mode == "ok":
        return (rep.ok, "ok" if rep.ok else rep.headline())
    reasons = rep.quarantined["reason"].tolist() if "reason" in rep.quarantined else []
    if not reasons or not all(case.expect in r for r in reasons) or case.expect not in rep.headline():
        return False, f"quarantine report lacks {case.expect!r}: {rep.headline()}"
    return True, f"quarantined {rep.n_quarantined}: {rep.headline()}"


# ---- huge file: peak memory of a big-but-allowed CSV, in a child process --------------------------------
_CHILD = r"""
import json, resource, sys, time
from tideline.data import load_bars, validate_bars
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
t0 = time.perf_counter()
rep = validate_bars(load_bars(sys.argv[1], max_bytes=sys.argv[2]), mode="quarantine")
print(json.dumps({"rows": rep.n_input, "clean": rep.n_clean, "seconds": time.perf_counter() - t0,
                  "base": base, "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""


def write_big_csv(path: Path, target_bytes: int) -> int:
    """A valid bars CSV of about ``target_bytes`` (many symbols, minute bars); returns its size."""
    import numpy as np

    rng = np.random.default_rng(0)
    size, sym = 0, 0
    with open(path, "w", encoding="utf-8") as f:
        f.write(HEADER + "\n")
        while size < target_bytes:
            k = 100_000
            ts = (np.datetime64("2020-01-01T00:00") + np.arange(k) * np.timedelta64(1, "m")).astype(str)
            c = 100 * np.exp(np.cumsum(rng.normal(0, 1e-3, k)))
            o = c * (1 + rng.normal(0, 5e-4, k))
            h, lo = np.maximum(o, c) * 1.001, np.minimum(o, c) * 0.999
            v = rng.integers(1, 10_000, k)
            text = "".join(f"{t},S{sym:04d},{a:.4f},{b:.4f},{x:.4f},{y:.4f},{z}\n"
                           for t, a, b, x, y, z in zip(ts, o, h, lo, c, v, strict=True))
            f.write(text)
            size += len(text)
            sym += 1
    return path.stat().st_size


def huge_file(work: Path, target_bytes: int) -> dict[str, Any]:
    """Load + validate a big CSV in a child: peak RSS over the file size; and a refusal just under its size."""
    path = work / "huge.csv"
    size = write_big_csv(path, target_bytes)
    env = {**os.environ}
    p = subprocess.run([sys.executable, "-c", _CHILD, str(path), str(size + 1024)], capture_output=True,
                       text=True, env=env, timeout=600)
    res: dict[str, Any] = {"size": size, "ok": p.returncode == 0}
    if p.returncode != 0:
        res["error"] = (p.stderr.strip().splitlines() or ["?"])[-1]
        return res
    res.update(json.loads(p.stdout.strip().splitlines()[-1]))
    from tideline.data import load_bars
    from tideline.errors import DataError

    t0 = time.perf_counter()
    try:
        load_bars(path, max_bytes=size // 2)
        res["refused"] = False
    except DataError as e:
        res["refused"] = unclear(str(e)) is None and "input limit" in str(e)
        res["refusal"] = str(e)
    res["refuse_seconds"] = time.perf_counter() - t0
    path.unlink()
    return res


# ---- CLI ------------------------------------------------------------------------------------------------
@dataclass
class CliCase:
    id: str
    argv: list[str]  # {reg} {missing} {file} {s3} {data} {work} are filled in
    expect: str  # words the output must hold (case-insensitive)
    env: dict[str, str] = field(default_factory=dict)


REG = ["--registry", "{reg}"]
MISSING = ["--registry", "{missing}"]
AFILE = ["--registry", "{file}"]
S3 = ["--registry", "s3://tideline-models/reg"]
S3_ENV = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "TIDELINE_S3_ATTEMPTS": "1", "AWS_ACCESS_KEY_ID": "x",
          "AWS_SECRET_ACCESS_KEY": "x", "AWS_DEFAULT_REGION": "us-east-1"}

# commands that use the registry, with arguments that are otherwise right
REGISTRY_COMMANDS: dict[str, list[str]] = {
    "models list": ["models", "list"],
    "models show": ["models", "show", "production"],
    "models history": ["models", "history"],
    "models promote": ["models", "promote", "v1"],
    "models rollback": ["models", "rollback"],
    "models delete": ["models", "delete", "v1"],
    "models cleanup": ["models", "cleanup"],
    "models verify": ["models", "verify"],
    "drift check": ["drift", "check", "--synthetic", "--symbols", "3", "--bars", "200"],
    "feedback": ["feedback", "--data", "{data}"],
    "rollout start": ["rollout", "start", "--candidate", "v1"],
    "rollout resume": ["rollout", "resume"],
    "rollout status": ["rollout", "status"],
    "rollout promote": ["rollout", "promote"],
    "rollout rollback": ["rollout", "rollback"],
    "rollout approve": ["rollout", "approve", "--by", "alice"],
    "serve": ["serve", "--detach", "--port", "0"],
    "trigger check": ["trigger", "check"],
    "loop status": ["loop", "status"],
    "loop history": ["loop", "history"],
    "loop kill-switch": ["loop", "kill-switch", "on"],
    "alerts list": ["alerts", "list"],
    "alerts ack": ["alerts", "ack", "20261207T000000-abcdef"],
    "alerts resolve": ["alerts", "resolve", "20261207T000000-abcdef"],
    "experience collect": ["experience", "collect", "--data", "{data}"],
    "experience stats": ["experience", "stats"],
    "experience list": ["experience", "list"],
    "experience export": ["experience", "export", "{work}/buffer.parquet"],
}
# commands that write may create a registry directory; they still fail on what they were asked to move
MISSING_REGISTRY_SAYS = {"models promote": "v1", "models rollback": "no previous production version",
                         "models delete": "v1"}
# every command, with a wrong option and with a required argument missing (where it has one)
ALL_COMMANDS: list[list[str]] = [
    ["cycle"], ["models", "list"], ["models", "show"], ["models", "history"], ["models", "promote"],
    ["models", "rollback"], ["models", "delete"], ["models", "cleanup"], ["models", "verify"], ["data", "validate"],
    ["data", "synth"],
    ["pipeline", "run"], ["pipeline", "compile"], ["pipeline", "submit"], ["pipeline", "schedule"],
    ["drift", "check"], ["feedback"], ["rollout", "start"], ["rollout", "resume"], ["rollout", "status"],
    ["rollout", "promote"], ["rollout", "rollback"], ["rollout", "approve"], ["serve"], ["trigger", "check"], ["trigger", "run"], ["demo"],
    ["loop", "status"], ["loop", "history"], ["loop", "kill-switch"], ["replay"],
    ["alerts", "list"], ["alerts", "ack"], ["alerts", "resolve"],
    ["experience", "collect"], ["experience", "stats"], ["experience", "list"], ["experience", "export"],
]
MISSING_ARGS: list[tuple[list[str], str]] = [
    (["models", "show"], "missing argument 'version'"),
    (["models", "promote"], "missing argument 'version'"),
    (["models", "delete"], "missing argument"),
    (["data", "validate"], "missing argument 'path'"),
    (["data", "synth"], "missing argument 'out'"),
    (["pipeline", "submit"], "missing option '--host'"),
    (["pipeline", "schedule"], "missing option '--host'"),
    (["rollout", "start"], "missing option '--candidate'"),
    (["feedback"], "missing option '--data'"),
    (["cycle"], "exactly one of --data"),
    (["drift", "check"], "exactly one of --data"),
    (["pipeline", "run", "--synthetic"], "needs --local"),
    (["pipeline", "run", "--local"], "exactly one of --data"),
    (["pipeline", "submit", "--host", "http://127.0.0.1:9"], "exactly one of --data"),
    (["pipeline", "schedule", "--host", "http://127.0.0.1:9", "--cron", "every day"], "cron"),
    (["trigger", "run", "--mode", "cloud"], "--mode must be local or kfp"),
    (["trigger", "check", "--now", "yesterday-ish"], "not an ISO timestamp"),
    (["trigger", "check", "--synthetic", "--data", "x.csv"], "at most one of"),
    (["cycle", "--synthetic", "--families", "catboost"], "unknown model families"),
    (["cycle", "--synthetic", "--bars", "10"], "invalid value for '--bars'"),
    (["data", "synth", "{work}/x.txt"], "unknown file type"),
    (["data", "synth", "{work}/x.csv", "--symbols", "0"], "invalid value for '--symbols'"),
    (["data", "validate", "{work}/nope.csv"], "not found"),
    (["cycle", "--data", "{work}/nope.csv"], "not found"),
    (["feedback", "--data", "{data}", "--since", "soon"], "--since"),
    (["models", "cleanup", "--keep", "0"], "invalid value for '--keep'"),
    (["rollout", "start", "--candidate", "v1", "--steps", "10,abc"], "nothing is in production"),
    (["serve", "--port", "99999"], "--port 99999 is not a port number"),
    (["demo", "--seed", "x"], "invalid value for '--seed'"),
    (["loop", "--once", "--now", "yesterday-ish"], "not an ISO timestamp"),
    (["loop", "history", "--limit", "0"], "invalid value for '--limit'"),
    (["loop", "--once", "--speed", "0"], "invalid value for '--speed'"),
    (["loop", "kill-switch"], "missing argument 'state'"),
    (["loop", "--api-port", "0"], "never served without one"),
    (["loop", "--once", "--api-port", "0"], "drop --once"),
    (["loop", "kill-switch", "sideways"], "'on' or 'off'"),
    (["alerts", "ack"], "missing argument 'id'"),
    (["alerts", "resolve"], "missing argument 'id'"),
    (["alerts", "ack", "nosuch"], "no alert 'nosuch'"),
    (["experience", "export"], "missing argument 'file'"),
    (["experience", "export", "{work}/buffer.txt"], "must end in .parquet or .csv"),
    (["experience", "list", "--tag", "lucky"], "unknown tag 'lucky'"),
    (["experience", "list", "--limit", "0"], "invalid value for '--limit'"),
    (["experience", "collect"], "no bars are stored"),
    (["experience", "collect", "--data", "{work}/nope.csv"], "not found"),
    (["replay"], "missing option '--data'"),
    (["replay", "--data", "{work}/nope.csv"], "not found"),
    (["replay", "--data", "{data}", "--policies", "yearly"], "unknown policy yearly"),
    (["replay", "--data", "{data}", "--check-every", "0"], "invalid value for '--check-every'"),
    (["replay", "--data", "{data}", "--families", "catboost"], "unknown model families"),
]
BAD_VERSIONS = ["v999", "../etc", "v0", "production;rm", ""]


def cli_cases() -> list[CliCase]:
    cases: list[CliCase] = []
    for cmd in ALL_COMMANDS:
        cases.append(CliCase(f"{' '.join(cmd)}: unknown option", [*REG, *cmd, "--bogus"], "no such option"))
    for argv, expect in MISSING_ARGS:
        cases.append(CliCase(f"{' '.join(a for a in argv if '{' not in a)}: bad arguments", [*REG, *argv], expect))
    for name, argv in REGISTRY_COMMANDS.items():
        if name != "trigger check":  # trigger check reports on an empty registry (no_production fires)
            cases.append(CliCase(f"{name}: registry dir missing", [*MISSING, *argv],
                                 MISSING_REGISTRY_SAYS.get(name, "no registry at")))
        cases.append(CliCase(f"{name}: registry is a file", [*AFILE, *argv], "is a file, not a directory"))
        cases.append(CliCase(f"{name}: S3 unreachable", [*S3, *argv], "cannot reach", env=S3_ENV))
    for v in BAD_VERSIONS:
        for argv in (["models", "show", v], ["models", "promote", v], ["models", "delete", v],
                     ["models", "verify", v],
                     ["drift", "check", "--synthetic", "--symbols", "3", "--bars", "200", "--version", v],
                     ["serve", "--detach", "--port", "0", "--version", v]):
            cases.append(CliCase(f"{' '.join(argv[:2])}: version {v!r}", [*REG, *argv], v or "version"))
    for sub in ("status", "resume", "promote", "rollback", "approve"):
        cases.append(CliCase(f"rollout {sub}: unknown rollout", [*REG, "rollout", sub, "--name", "nosuch"], "nosuch"))
    cases.append(CliCase("models rollback: nothing to roll back", [*REG, "models", "rollback"], "previous"))
    cases.append(CliCase("rollout start: no production", [*REG, "rollout", "start", "--candidate", "v1"],
                         "production"))
    cases.append(CliCase("config file missing", ["--config", "{work}/nope.yaml", *REG, "models", "list"], "nope.yaml"))
    cases.append(CliCase("registry scheme", ["--registry", "ftp://x/y", "models", "list"], "registry"))
    return cases


def cli_world(work: Path) -> dict[str, str]:
    """An empty registry, a missing path, a plain file, a bars file: the placeholders of the CLI cases."""
    from tideline.data import synthetic_market, write_bars

    work.mkdir(parents=True, exist_ok=True)
    reg = work / "reg"
    if not reg.exists():
        from tideline.registry import open_registry

        open_registry(reg.as_uri())
    (work / "afile").write_text("not a directory\n")
    data = work / "bars.csv"
    if not data.exists():
        write_bars(synthetic_market(3, 200, seed=1), data)
    return {"reg": reg.as_uri(), "missing": (work / "no" / "such" / "registry").as_uri(),
            "file": (work / "afile").as_uri(), "data": str(data), "work": str(work)}


def _fill(argv: list[str], world: dict[str, str]) -> list[str]:
    return [a.format(**world) for a in argv]


def run_cli_case(case: CliCase, world: dict[str, str]) -> tuple[bool, str, int]:
    """Run ``tideline.cli.main`` in-process: (passed, what happened, exit code)."""
    import uuid

    from tideline.cli import main

    world = {**world, "missing": (Path(world["work"]) / "no" / uuid.uuid4().hex / "registry").as_uri()}
    argv = _fill(case.argv, world)
    env = {"TIDELINE_HOME": str(Path(world["work"]) / "home"), **case.env}
    saved = {k: os.environ.get(k) for k in env}
    o, e = io.StringIO(), io.StringIO()
    try:
        os.environ.update(env)
        with contextlib.redirect_stdout(o), contextlib.redirect_stderr(e):
            try:
                code = main(argv)
            except SystemExit as x:  # main() must not exit by itself; count it as it is
                code = x.code if isinstance(x.code, int) else 1
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    text = (e.getvalue() + o.getvalue()).strip()
    if code == 0:
        return False, f"exit 0: {text[:200]}", code
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if "Traceback" in text or "internal error" in text:
        return False, f"traceback/internal error: {text[-300:]}", code
    if len(lines) > 8:
        return False, f"{len(lines)} lines of output", code
    if case.expect.format(**world).lower() not in text.lower():
        return False, f"output lacks {case.expect!r}: {text[:300]}", code
    return True, text.replace("\n", " | ")[:200], code


def console_script(argv: list[str], env: dict[str, str] | None = None, timeout: float = 120
                   ) -> subprocess.CompletedProcess[str]:
    """Run the installed ``tideline`` console script (next to this python)."""
    exe = Path(sys.executable).with_name("tideline")
    return subprocess.run([str(exe), *argv], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


# ---- scenarios ------------------------------------------------------------------------------------------
def scenarios(quick: bool, work: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []

    # market data
    t0 = time.perf_counter()
    cases = data_cases()
    failed = []
    for c in cases:
        ok, why = run_data_case(c, work / "data")
        if not ok:
            failed.append(f"{c.id}: {why}")
    big = huge_file(work, (20 if quick else 200) << 20)
    n_strict = sum(c.mode.startswith("strict") for c in cases)
    n_q = sum(c.mode == "quarantine" for c in cases)
    n_ok = sum(c.mode == "ok" for c in cases)
    result = (f"{len(cases) - len(failed)}/{len(cases)} as expected: {n_strict} refused with a one-line message, "
              f"{n_q} quarantined with a reason, {n_ok} valid oddities (BOM, epoch ns, time zones) read")
    big_ok = bool(big.get("ok")) and bool(big.get("refused"))
    if big.get("ok"):
        ratio = (big["peak"] - big["base"]) / big["size"]
        result += (f"; a {big['size'] / 2**20:.0f} MiB CSV ({big['rows']:,} rows) loaded + validated in "
                   f"{big['seconds']:.1f} s at peak RSS {big['peak'] / 2**20:.0f} MiB "
                   f"({ratio:.1f}x the file over the interpreter's {big['base'] / 2**20:.0f} MiB); "
                   f"refused at half its size in {big['refuse_seconds'] * 1000:.0f} ms")
        big_ok = big_ok and ratio < 8
    else:
        result += f"; huge file failed: {big.get('error')}"
    if failed:
        result += "; FAILED " + "; ".join(failed[:5])
    rows.append({"area": "Bad input", "scenario": f"market data: {len(DEFECTS) * 2} defect + "
                 f"{len(cases) - 2 * len(DEFECTS)} adversarial cases (size, encodings, extreme values, time zones, duplicate columns, short history, implausible series)",
                 "times": len(cases) + 1, "unit": "cases", "result": result, "lost": len(failed) + (0 if big_ok else 1),
                 "ok": not failed and big_ok, "seconds": round(time.perf_counter() - t0, 1)})

    # CLI
    t0 = time.perf_counter()
    world = cli_world(work / "cli")
    ccases = cli_cases()
    bad: list[str] = []
    codes: dict[int, int] = {}
    for c in ccases:
        ok, why, code = run_cli_case(c, world)
        codes[code] = codes.get(code, 0) + 1
        if not ok:
            bad.append(f"{c.id}: {why}")
    # the real console script, for its exit code
    # (--registry is taken before or after the command, as kubectl takes its global flags)
    scripts = [(["--registry", world["missing"], "models", "list"], 9), (["models", "show", "v999", "--registry",
                                                                           world["reg"]], 6),
               (["--registry", world["reg"], "models", "show", "v999"], 6), (["data", "validate"], 2)]
    for argv, want in scripts:
        p = console_script(argv)
        if p.returncode != want or "Traceback" in p.stderr:
            bad.append(f"console script {' '.join(argv[-3:])}: exit {p.returncode} (want {want})")
    n = len(ccases) + len(scripts)
    commands = len(ALL_COMMANDS)
    res = (f"{n - len(bad)}/{n} exit non-zero with a short message naming the problem, 0 tracebacks; exit codes "
           + ", ".join(f"{k}: {v}" for k, v in sorted(codes.items())))
    if bad:
        res += "; FAILED " + "; ".join(bad[:5])
    rows.append({"area": "Bad input", "scenario": f"CLI: {commands} commands x wrong args / missing registry / "
                 "unknown version / unknown rollout", "times": n, "unit": "invocations", "result": res,
                 "lost": len(bad), "ok": not bad, "seconds": round(time.perf_counter() - t0, 1)})
    return rows


if __name__ == "__main__":
    import tempfile

    quick = "--quick" in sys.argv
    with tempfile.TemporaryDirectory() as tmp:
        for row in scenarios(quick, Path(tmp)):
            print(json.dumps(row))
