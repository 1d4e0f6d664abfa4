"""The Dagster code location: Definitions, resources, schedules and sensors."""
