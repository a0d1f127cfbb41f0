"""peftlab: parameter-efficient fine-tuning of Hugging Face transformers, driven by recipes."""

from .methods import DoRA, FullFineTuning, LoRA
from .quant import Quant4bit, Quant8bit
from .recipe import Data, Model, Recipe, Train, load_recipe

__all__ = ["Recipe", "Model", "Data", "Train", "load_recipe", "FullFineTuning", "LoRA", "DoRA",
           "Quant4bit", "Quant8bit"]
