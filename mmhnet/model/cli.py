"""Registers the model's subcommands (presets, train, generate) with the ``mmhnet`` CLI."""

from .cli_generate import add_generate_command
from .cli_presets import add_presets_command
from .cli_train import add_train_command

__all__ = ["add_model_commands"]


def add_model_commands(sub):
    add_presets_command(sub)
    add_train_command(sub)
    add_generate_command(sub)
