"""Ground floor: config, file I/O, API client, registry of methods and tasks, metric formulas, table writer.

Every stage package stands on this one; nothing here imports a stage."""
