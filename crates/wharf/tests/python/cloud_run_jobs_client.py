"""Google's own Cloud Run client library, unchanged, running a job against Wharf's API.

Run by tests/python_client.rs with WHARF_API (http://host:port), WHARF_TOKEN and WHARF_IMAGE set.
JobsClient creates a job (a dry run first, which must store nothing), runs it and waits for the
execution; ExecutionsClient and TasksClient read what ran; the operations mixin lists operations.
"""

import os
import sys

from google.api_core import exceptions
from google.api_core.client_options import ClientOptions
from google.cloud import run_v2
from google.oauth2.credentials import Credentials

api = os.environ["WHARF_API"]
token = os.environ["WHARF_TOKEN"]
image = os.environ["WHARF_IMAGE"]
options = dict(transport="rest", client_options=ClientOptions(api_endpoint=api), credentials=Credentials(token=token))

jobs = run_v2.JobsClient(**options)
executions = run_v2.ExecutionsClient(**options)
tasks = run_v2.TasksClient(**options)
parent = "projects/pyjobs/locations/us-central1"
name = f"{parent}/jobs/py-job"

job = run_v2.Job(
    template=run_v2.ExecutionTemplate(
        task_count=3,
        parallelism=2,
        template=run_v2.TaskTemplate(
            containers=[
                run_v2.Container(image=image, args=["job"], env=[run_v2.EnvVar(name="TESTAPP_ECHO", value="py")])
            ],
            max_retries=1,
        ),
    )
)

dry = jobs.create_job(request=run_v2.CreateJobRequest(parent=parent, job=job, job_id="py-job", validate_only=True))
dry.result(timeout=60)
try:
    jobs.get_job(name=name)
    sys.exit("a validateOnly create stored the job")
except exceptions.NotFound:
    print("dry run stored nothing")

created = jobs.create_job(parent=parent, job=job, job_id="py-job").result(timeout=60)
assert created.name == name, created.name
print("created", created.name)

execution = jobs.run_job(name=name).result(timeout=180)
assert execution.succeeded_count == 3, execution
assert execution.task_count == 3, execution.task_count
print("executed", execution.name)

listed = list(executions.list_executions(parent=name))
assert [e.name for e in listed] == [execution.name], [e.name for e in listed]
got = executions.get_execution(name=execution.name)
assert got.conditions[0].state == run_v2.Condition.State.CONDITION_SUCCEEDED, got.conditions

# Paging: one task a page, three pages.
pages = tasks.list_tasks(request=run_v2.ListTasksRequest(parent=execution.name, page_size=1))
task_list = list(pages)
assert len(task_list) == 3, task_list
assert sorted(t.index for t in task_list) == [0, 1, 2], [t.index for t in task_list]
task = tasks.get_task(name=task_list[0].name)
assert task.execution == execution.name, task.execution
print("tasks", len(task_list))

ops = list(jobs.list_operations(request={"name": parent}).operations)
assert ops, "ListOperations returned nothing"
assert all(op.done for op in ops), [op.name for op in ops if not op.done]
print("operations", len(ops))

dry = jobs.delete_job(request=run_v2.DeleteJobRequest(name=name, validate_only=True))
dry.result(timeout=60)
assert jobs.get_job(name=name).name == name
jobs.delete_job(name=name).result(timeout=60)
try:
    jobs.get_job(name=name)
    sys.exit("the job is still there after delete")
except exceptions.NotFound:
    print("deleted")
