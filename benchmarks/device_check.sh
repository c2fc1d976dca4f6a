#!/usr/bin/env bash
# One short pass on a machine with an accelerator: install jaxyard over the JAX already there,
# run the test suite, where each epoch's time goes (epoch_breakdown.py), the side-by-side step
# benchmark, the engine/CLI benchmark and the logger costs. Everything it prints goes to
# $OUT/device.log (or ./device.log); the breakdown's numbers also to $OUT/epoch_breakdown.json.
#   bash benchmarks/device_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
LOG="${OUT:-.}/device.log"
export PYTHONUNBUFFERED=1 JAXYARD_NO_COMPILE_CACHE=1
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())"
  python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . ./examples/jaxyard-example-plugin 2>&1 | tail -2
  echo "== default run"; time (python3 cli.py run --out /tmp/jy-default 2>&1 | tail -12)
  echo "== per-epoch breakdown: default run and large"; timeout 120 python3 benchmarks/epoch_breakdown.py --json "${OUT:-.}/epoch_breakdown.json"
  echo "== side by side, seed"; python3 benchmarks/side_by_side.py --workload seed --epochs 60
  echo "== side by side, large"; python3 benchmarks/side_by_side.py --workload large --epochs 8
  echo "== engine and baselines, fresh processes"; python3 benchmarks/bench.py --workload large --variants jax_scan,jaxyard_engine,jaxyard_cli --repeats 2
  echo "== loggers"; python3 benchmarks/logger_cost.py --loggers jsonl,csv,tensorboard
  echo "== tests"; timeout 300 python3 -m pytest -q -p no:cacheprovider --durations=5 -m "not slow" 2>&1 | tail -25
} 2>&1 | tee "$LOG"
