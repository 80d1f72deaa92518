-- compose only (development): the passwords of the roles of deploy/k8s/postgres/roles.sql.
ALTER ROLE salesplan_deal_service PASSWORD 'deal-service';
ALTER ROLE salesplan_distributor PASSWORD 'distributor';
ALTER ROLE salesplan_reporting PASSWORD 'reporting';
ALTER ROLE salesplan_reporting_verify PASSWORD 'reporting-verify';
