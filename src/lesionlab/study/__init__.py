"""Reader studies: physicians classify lesion images under a time limit, alone and with the model's output.

The platform (study definition, frozen case storage, the participant web app, export) writes one tidy table of
answers whose columns are fixed in :mod:`lesionlab.study.columns`; the analysis (reader metrics, switching,
OR-Hillis MRMC, simulated readers, study planning, reports) reads only that table.
"""
