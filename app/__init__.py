"""The program's top: the command line (cli.py) and the deployments that run the research flow on a schedule
(deployments.py). They stand on flows/, which stands on tasks/, which stands on infra/; nothing below imports them."""
