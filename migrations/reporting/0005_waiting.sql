-- Whether an open deal waits in its plan's queue for a manager (issue 20): counted in
-- PipelineSummary.
ALTER TABLE deals ADD COLUMN waiting boolean NOT NULL DEFAULT false;
