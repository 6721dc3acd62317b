"""The Airflow UI plugin: a "Video" tab on each generation task instance and a "Sora 2" page (api-server only)."""
