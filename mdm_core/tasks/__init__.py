"""Built-in reasoning tasks: Sudoku and star-graph path finding, each a prompted data source with
an accuracy evaluator that decodes the validation prompts with the run's sampler.

Nothing is imported here: the registry imports ``mdm_core.tasks.sudoku`` or
``mdm_core.tasks.star_graph`` only when a spec names one of their components.
"""
