"""Job timing lines written by setup_job and the per-rule overhead table built from them."""
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _bench():
    spec = importlib.util.spec_from_file_location("job_overhead", ROOT / "benchmarks" / "job_overhead.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_setup_job_writes_start_and_end_timing(tmp_path):
    log = tmp_path / "job.log"
    code = ("import time; from llm_compression.runtime import setup_job; "
            f"setup_job({str(log)!r}); time.sleep(0.3)")
    subprocess.run([sys.executable, "-c", code], check=True, env={"PYTHONPATH": str(ROOT / "src")})
    bench = _bench()
    text = log.read_text()
    (start,), (end,) = bench._START.findall(text), bench._END.findall(text)
    assert 0.0 < float(start) < float(end)
    assert float(end) - float(start) >= 0.3 - 0.002  # both printed to the millisecond


def test_overhead_table_from_benchmark_and_log_files(tmp_path):
    bench = _bench()
    for rule, name, wall, start, end in [("evaluate", "a/x", 10.0, 3.0, 9.0), ("evaluate", "a/y", 20.0, 4.0, 19.0),
                                         ("plot", "fig.png", 5.0, 1.5, 4.5)]:
        b = tmp_path / "benchmarks" / rule / f"{name}.tsv"
        b.parent.mkdir(parents=True, exist_ok=True)
        b.write_text(f"s\th:m:s\n{wall}\t0:00:{int(wall):02d}\n")
        lg = tmp_path / "logs" / rule / f"{name}.log"
        lg.parent.mkdir(parents=True, exist_ok=True)
        lg.write_text(f"x INFO llm_compression: job timing: work starts {start} s after process start\n"
                      f"x INFO llm_compression: job timing: work ends {end} s after process start\n")
    rows = {r["rule"]: r for r in bench.summarize(bench.read_jobs(tmp_path))}
    ev = rows["evaluate"]
    assert ev["jobs"] == 2 and ev["wall_s"] == 30.0
    assert ev["before_s"] == 7.0 and ev["before_median_s"] == 3.5
    assert ev["work_s"] == 21.0 and ev["after_s"] == 2.0
    assert ev["overhead_pct"] == pytest.approx(100 * 9 / 30)
    assert rows["plot"]["overhead_pct"] == pytest.approx(100 * 2 / 5)


@pytest.mark.parametrize("fail", [False, True], ids=["succeeds", "raises"])
def test_finish_job_exits_0_with_everything_written_and_a_failure_keeps_its_status(tmp_path, fail):
    """finish_job skips interpreter finalization only on success: the log (both timing lines, the last
    message), stdout printed before it and a file written before it are all there; a job that raises
    never reaches it, exits 1 and keeps its traceback in the log."""
    log, out = tmp_path / "job.log", tmp_path / "out.txt"
    code = ("import atexit; from llm_compression.runtime import finish_job, setup_job; "
            f"lg = setup_job({str(log)!r}); open({str(out)!r}, 'w').write('done'); print('printed'); "
            "atexit.register(lambda: open(" + repr(str(tmp_path / "atexit")) + ", 'w').write('ran')); "
            + ("raise RuntimeError('boom'); " if fail else "") + "lg.info('last message'); finish_job(); print('never')")
    r = subprocess.run([sys.executable, "-c", code], env={"PYTHONPATH": str(ROOT / "src")}, capture_output=True,
                       text=True)
    text = log.read_text()
    bench = _bench()
    assert len(bench._START.findall(text)) == 1 and len(bench._END.findall(text)) == 1
    assert out.read_text() == "done" and "printed" in text and "never" not in text
    if fail:
        assert r.returncode == 1 and "RuntimeError: boom" in text and "last message" not in text
        assert (tmp_path / "atexit").exists()  # the normal exit path ran
    else:
        assert r.returncode == 0 and "last message" in text
        assert not (tmp_path / "atexit").exists()  # finalization skipped
