"""Train a small churn classifier and register it in MLflow, as a data scientist's repo would:
run from a git checkout (so MLflow records the commit), log the training dataset (name, source,
digest) and a signature, register a version of the `churn` model.

Usage: train.py --c 1.0 --seed 1 [--shift 0.0] [--source file:///data/churn.parquet]
Prints the registered version number on the last line."""

import argparse

import mlflow
import numpy as np
import pandas as pd
from mlflow.models import infer_signature
from sklearn.linear_model import LogisticRegression

FEATURES = ["tenure", "monthly_charges", "support_calls", "usage_gb"]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--c", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--shift", type=float, default=0.0, help="changes the data, hence its digest")
    p.add_argument("--source", default="file:///data/churn.parquet")
    p.add_argument("--register", default="churn")
    a = p.parse_args()

    rng = np.random.default_rng(a.seed)
    x = pd.DataFrame(rng.normal(size=(200, 4)) + a.shift, columns=FEATURES)
    y = ((x["support_calls"] - x["tenure"] + rng.normal(scale=0.5, size=200)) > 0).astype("int64")
    df = x.assign(churned=y)

    mlflow.set_experiment("churn")
    with mlflow.start_run(run_name=f"churn-C{a.c}"):
        dataset = mlflow.data.from_pandas(df, source=a.source, name="churn-train", targets="churned")
        mlflow.log_input(dataset, context="training")
        mlflow.log_param("C", a.c)
        model = LogisticRegression(C=a.c).fit(x, y)
        mlflow.log_metric("train_acc", float(model.score(x, y)))
        info = mlflow.sklearn.log_model(model, name="model", signature=infer_signature(x, model.predict(x)),
                                        input_example=x.head(2), registered_model_name=a.register or None)
    print(info.registered_model_version if a.register else info.model_uri)


if __name__ == "__main__":
    main()
