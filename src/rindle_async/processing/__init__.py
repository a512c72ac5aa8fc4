"""libvips work (analysis and rendering), run in a process pool so a crash or a
runaway image never blocks or kills the worker's event loop."""
