-- The team database server's two databases (docker-compose.yml): the MLflow tracking
-- server's store and the Optuna studies. Run once, when the volume is new.
CREATE DATABASE mlflow;
CREATE DATABASE optuna;
