"""MLflow "models from code" entry point of the registered GLiDRE pyfunc.

MLflow copies this file into the logged model and executes it on load, so neither the wrapper
nor any torch module is pickled; the weights are the safetensors files in the model's artifacts.
"""

import mlflow.models

from glidre_core.registry import GLiDREPyfunc

mlflow.models.set_model(GLiDREPyfunc())
