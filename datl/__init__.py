"""datl: the batch runner (`datl run`) and the manifest and demo-data commands."""
