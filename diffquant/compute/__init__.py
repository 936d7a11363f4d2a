"""Where training units run: the unit protocol, the grid runner and its engines (in-process, local process pool,
Ray). Nothing here knows losses or models; a unit knows nothing of workers."""
