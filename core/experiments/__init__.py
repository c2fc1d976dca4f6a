"""Many runs: search spaces, sweeps, vectorized trials, comparing runs and their figures."""
