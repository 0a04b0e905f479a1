"""Layer tables of any `nn.Module`: shapes, jumps, receptive fields, parameters and MACs, layer by layer.

    table = layer_table(model, (3, 32, 32))
    print(format_table(table, "markdown"))

geometry.py holds the receptive-field arithmetic, rules.py what each layer kind does, table.py the walk
over the traced forward pass, formats.py the output formats.
"""
from cifarlab.analysis.formats import FORMATS, format_table
from cifarlab.analysis.table import AnalysisError, LayerRow, LayerTable, UnsupportedLayerError, layer_table

__all__ = ["FORMATS", "AnalysisError", "LayerRow", "LayerTable", "UnsupportedLayerError", "format_table",
           "layer_table"]
