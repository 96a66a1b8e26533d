"""Python programming problems judged by tests in the sandbox (see envs/code/env.py)."""

from envs.code.env import CodeConfig, CodeEnv
from envs.code.extract import extract_code

__all__ = ["CodeConfig", "CodeEnv", "extract_code"]
