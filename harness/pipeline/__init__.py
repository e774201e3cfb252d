"""Running the grid: configuration and run specs, the preflight computed once per cell, the one-way
stages of a run (search, train, finalize, export, evaluate, deploy), the typed run record, the store (written
only by the driver), and the executors that run cells."""
