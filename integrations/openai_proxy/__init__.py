"""A correcting OpenAI-compatible proxy: any OpenAI client gets Aligner-corrected chat replies."""

from integrations.openai_proxy.app import ProxyConfig, create_proxy_app, last_user_text

__all__ = ["ProxyConfig", "create_proxy_app", "last_user_text"]
