"""A merchant site's side: the Flower ClientApp (a thin adapter over seqanom_core: local DP
training under the site's privacy ledger, evaluation, score summaries) and its SuperNode command."""
