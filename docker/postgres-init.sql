-- the two backend stores of docker/compose.yaml, created on the volume's first start
CREATE DATABASE mlflow;
CREATE DATABASE prefect;
