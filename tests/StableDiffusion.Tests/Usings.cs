global using Xunit;
global using DeviceTensor = StableDiffusion.Runtime.Tensor;
