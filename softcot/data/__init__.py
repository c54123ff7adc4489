"""The data layer: pinned raw files (sources), one loader per dataset, and the prepared-example schema."""
