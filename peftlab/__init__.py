"""peftlab: parameter-efficient fine-tuning of Hugging Face transformers, driven by recipes."""

from .comparison import Comparison
from .heads import MLPHead
from .losses import CrossEntropy, FocalLoss
from .methods import (
           BOFT,
           IA3,
           OFT,
           AdaLoRA,
           DoRA,
           FullFineTuning,
           Houlsby,
           LoRA,
           Pfeiffer,
           PrefixTuning,
           PromptTuning,
           VeRA,
)
from .quant import Quant4bit, Quant8bit
from .recipe import Data, Model, Recipe, Train, load_recipe

__all__ = ["Recipe", "Model", "Data", "Train", "load_recipe", "FullFineTuning", "LoRA", "DoRA", "IA3", "PrefixTuning", "PromptTuning",
           "Houlsby", "Pfeiffer", "VeRA", "AdaLoRA", "OFT", "BOFT", "Quant4bit", "Quant8bit", "MLPHead", "CrossEntropy", "FocalLoss", "Comparison"]
