"""Export segment's finished videos as files other tools read (``hmhi-uvos export``).

    python jobs/export.py --input s3://bucket/run1/segment                 # every format, to <input>/exports
    python jobs/export.py --input runs/seg --output runs/seg-exports --formats coco

``--help`` lists every option; the job is ``pipeline.export`` (``JOB`` in ``pipeline/export/job.py``).
"""

from pipeline.cli import job_main, run_job_main
from pipeline.export.job import JOB


def main(argv=None):
    return job_main(JOB, argv, prog="jobs/export.py")


if __name__ == "__main__":
    raise SystemExit(run_job_main(main))
