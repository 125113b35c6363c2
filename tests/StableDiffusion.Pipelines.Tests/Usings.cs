global using Xunit;

// The end-to-end tests share one ILGPU CPU accelerator, which runs one launch at a time.
[assembly: CollectionBehavior(DisableTestParallelization = true)]
