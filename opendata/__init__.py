"""Open data: CKAN publishing, renderers and GIS aggregates."""
