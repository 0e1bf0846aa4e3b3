"""OpenRouter key management ("provisioning") API: our thin httpx client and a local emulator."""
