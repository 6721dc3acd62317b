"""Developer scripts: `make demo`, `make airflow`, `make test-matrix` and what they share (``processes``)."""
