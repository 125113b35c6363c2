using System.Diagnostics;

namespace StableDiffusion.Server;

public enum JobStatus { Queued, Running, Done, Failed, Cancelled }

/// <summary>The images of a finished job: PNG files with A1111's parameters chunk, their infotexts and seeds.</summary>
public sealed record JobResult(IReadOnlyList<byte[]> Pngs, IReadOnlyList<string> Infotexts, IReadOnlyList<ulong> Seeds,
    int Width, int Height, bool Interrupted, string ModelName, string ModelHash, DateTimeOffset Finished);

/// <summary>
/// One queued unit of work: a generation or a model switch. Its state is read by the endpoints while the worker
/// updates it; every change completes <see cref="Changed"/> so streams wake without polling.
/// </summary>
public sealed class Job
{
    private readonly object gate = new();
    private TaskCompletionSource changed = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly TaskCompletionSource done = new(TaskCreationOptions.RunContinuationsAsynchronously);

    public Job(string kind, GenerationSpec? spec, Action<Job>? work = null)
    {
        Kind = kind;
        Spec = spec;
        Work = work;
    }

    public string Id { get; } = Guid.NewGuid().ToString("N")[..16];
    public string Kind { get; }
    public GenerationSpec? Spec { get; }
    /// <summary>Work other than a generation (a model switch), run by the worker in queue order.</summary>
    public Action<Job>? Work { get; }
    public DateTimeOffset Created { get; } = DateTimeOffset.UtcNow;
    public CancellationTokenSource Cancel { get; } = new();
    /// <summary>Set by A1111's interrupt: stop after the current step but decode what was reached (not an error).</summary>
    public volatile bool Interrupt;
    /// <summary>Why a running job was cancelled (DELETE, a client gone, shutdown), for its error detail.</summary>
    public volatile string? CancelReason;

    public JobStatus Status { get; private set; } = JobStatus.Queued;
    public int Step { get; private set; }
    public int Steps { get; private set; }
    public double EtaSeconds { get; private set; }
    public byte[]? Preview { get; private set; }
    public JobResult? Result { get; private set; }
    public int ErrorStatus { get; private set; }
    public string? Error { get; private set; }
    public string? ErrorDetail { get; private set; }
    public Stopwatch Clock { get; } = new();

    public bool Finished => Status is JobStatus.Done or JobStatus.Failed or JobStatus.Cancelled;

    /// <summary>Completes at the next change of state.</summary>
    public Task Changed
    {
        get { lock (gate) return changed.Task; }
    }

    /// <summary>Completes when the job is done, failed or cancelled.</summary>
    public Task Done => done.Task;

    private void Notify()
    {
        TaskCompletionSource old;
        lock (gate)
        {
            old = changed;
            changed = new(TaskCreationOptions.RunContinuationsAsynchronously);
        }
        old.TrySetResult();
    }

    internal void Start(int steps)
    {
        Clock.Start();
        (Status, Steps) = (JobStatus.Running, steps);
        Notify();
    }

    internal void Progress(int step, int steps, double eta, byte[]? preview)
    {
        (Step, Steps, EtaSeconds) = (step, steps, eta);
        if (preview is not null) Preview = preview;
        Notify();
    }

    internal void Finish(JobResult result)
    {
        (Result, Status) = (result, JobStatus.Done);
        End();
    }

    internal void Fail(int status, string error, string detail)
    {
        (ErrorStatus, Error, ErrorDetail, Status) = (status, error, detail, JobStatus.Failed);
        End();
    }

    internal void Cancelled(string detail)
    {
        (ErrorStatus, Error, ErrorDetail, Status) = (409, "cancelled", detail, JobStatus.Cancelled);
        End();
    }

    private void End()
    {
        Clock.Stop();
        Notify();
        done.TrySetResult();
    }
}

/// <summary>
/// One worker per device runs jobs one at a time in arrival order; at most <c>maxQueue</c> wait behind the running
/// one, and a job past that is refused (429). Finished jobs are kept, the oldest dropped past <c>keep</c>.
/// </summary>
public sealed class JobQueue : IDisposable
{
    private readonly LinkedList<Job> waiting = new();
    private readonly Dictionary<string, Job> jobs = new(StringComparer.Ordinal);
    private readonly Queue<Job> finished = new();
    private readonly SemaphoreSlim signal = new(0);
    private readonly CancellationTokenSource stopping = new();
    private readonly Action<Job> run;
    private readonly int maxQueue, keep;
    private readonly Thread worker;
    private readonly TextWriter log;

    public JobQueue(Action<Job> run, int maxQueue, int keep, TextWriter log)
    {
        this.run = run;
        this.maxQueue = maxQueue;
        this.keep = keep;
        this.log = log;
        worker = new Thread(Loop) { IsBackground = true, Name = "sd serve worker" };
        worker.Start();
    }

    /// <summary>Runs before each job (tests hold the worker here to fill the queue deterministically).</summary>
    internal Action? BeforeJob { get; set; }

    public Job? Running { get; private set; }

    /// <summary>Jobs waiting, and the running one.</summary>
    public int Pending
    {
        get { lock (waiting) return waiting.Count + (Running is null ? 0 : 1); }
    }

    public Job Enqueue(Job job)
    {
        lock (waiting)
        {
            if (stopping.IsCancellationRequested) throw new ApiException(503, "shutting down", "the server is stopping");
            if (waiting.Count >= maxQueue)
                throw new ApiException(429, "queue full", $"{waiting.Count} jobs are waiting (--max-queue {maxQueue}); try again later");
            waiting.AddLast(job);
            jobs[job.Id] = job;
        }
        signal.Release();
        return job;
    }

    public Job? Find(string id)
    {
        lock (waiting) return jobs.GetValueOrDefault(id);
    }

    /// <summary>Every known job, oldest first.</summary>
    public IReadOnlyList<Job> All()
    {
        lock (waiting) return jobs.Values.OrderBy(j => j.Created).ToList();
    }

    /// <summary>Position in the queue (0: next), or -1 when not waiting.</summary>
    public int PositionOf(Job job)
    {
        lock (waiting)
        {
            int i = 0;
            for (var n = waiting.First; n is not null; n = n.Next, i++)
                if (n.Value == job) return i;
            return -1;
        }
    }

    /// <summary>A waiting job is removed at once; a running one stops after its current step.</summary>
    public void Cancel(Job job, string why)
    {
        bool removed;
        lock (waiting) removed = waiting.Remove(job);
        if (removed)
        {
            job.Cancelled(why);
            Retire(job);
        }
        else
        {
            job.CancelReason ??= why;
            job.Cancel.Cancel();
        }
    }

    private void Loop()
    {
        while (true)
        {
            try
            {
                signal.Wait(stopping.Token);
            }
            catch (OperationCanceledException)
            {
                return;
            }
            Job? job;
            lock (waiting)
            {
                job = waiting.First?.Value;
                if (job is null) continue;
                waiting.RemoveFirst();
                Running = job;
            }
            try
            {
                BeforeJob?.Invoke();
                run(job);
            }
            catch (Exception e)
            {
                // The runner reports its own failures; this is the last guard so that the worker never dies.
                if (!job.Finished) job.Fail(500, "internal error", e.GetType().Name);
            }
            finally
            {
                lock (waiting) Running = null;
                Retire(job);
                log.WriteLine($"sd serve: job {job.Id} {job.Kind} {job.Status.ToString().ToLowerInvariant()} in {job.Clock.Elapsed.TotalSeconds:F2} s" +
                              (job.Error is null ? "" : $": {job.Error}: {job.ErrorDetail}"));
            }
        }
    }

    private void Retire(Job job)
    {
        lock (waiting)
        {
            finished.Enqueue(job);
            while (finished.Count > keep) jobs.Remove(finished.Dequeue().Id);
        }
    }

    /// <summary>Graceful stop: waiting jobs are cancelled, the running one stops after its step, the worker ends.</summary>
    public void Stop(TimeSpan wait)
    {
        List<Job> dropped;
        lock (waiting)
        {
            if (stopping.IsCancellationRequested) return;
            stopping.Cancel();
            dropped = [.. waiting];
            waiting.Clear();
            if (Running is { } running)
            {
                running.CancelReason ??= "the server is stopping";
                running.Cancel.Cancel();
            }
        }
        foreach (var j in dropped) j.Cancelled("the server is stopping");
        worker.Join(wait);
    }

    public void Dispose()
    {
        Stop(TimeSpan.FromSeconds(30));
        signal.Dispose();
        stopping.Dispose();
    }
}
