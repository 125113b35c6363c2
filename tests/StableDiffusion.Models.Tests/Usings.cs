global using Xunit;
global using DeviceTensor = StableDiffusion.Runtime.Tensor;

// The tests share one ILGPU CPU accelerator, which runs one launch at a time.
[assembly: CollectionBehavior(DisableTestParallelization = true)]
