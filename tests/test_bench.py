"""Every benchmark still runs: each script under bench/ with ``--smoke`` (tiny sizes, no
thresholds) writes its table's JSON with the keys BENCHMARKS.md documents."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

BENCH = pathlib.Path(__file__).resolve().parent.parent / "bench"

#: script -> the result keys it must report
KEYS = {
    "pipeline": ["pipeline_vs_pyvips_pool", "pipeline_vs_pillow_pool",
                 "pipeline_defaults_vs_pyvips_pool", "ready_latency_p50_ms", "ready_latency_p99_ms",
                 "db_roundtrips_per_upload", "idle_redis_commands_per_s"],
    "ledger": ["ledger_latency_p50_ms", "ledger_latency_p99_ms", "ledger_flush_vs_arq_enqueue",
               "ledger_noop_vs_arq"],
    "delivery": ["urls_page_queries", "urls_page_ms", "s3_sign_vs_aiobotocore", "s3_signs_per_s",
                 "aiobotocore_signs_per_s", "local_signs_per_s"],
    "memory": ["render_peak_rss_mb_10k_jpeg", "bomb_refuse_ms", "bomb_refuse_peak_rss_mb"],
    "maintenance": ["abort_peak_rss_mb", "cleanup_peak_rss_mb", "maintenance_seq_scans"],
    "placeholders": ["photo_added_ms", "photo_added_vs_full_decode", "noise_added_ms", "hash_ms",
                     "render_frame_ms"],
}


@pytest.mark.parametrize("name", sorted(KEYS))
def test_benchmark_smoke_run(name, tmp_path):
    done = subprocess.run([sys.executable, str(BENCH / f"{name}.py"), "--smoke", "--out", str(tmp_path)],
                          cwd=BENCH.parent, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    document = json.loads((tmp_path / f"{name}.json").read_text())
    assert document["smoke"] is True
    missing = [key for key in KEYS[name] if document["results"].get(key) is None]
    assert not missing, f"{name}.json lacks {missing}: {document['results']}"
