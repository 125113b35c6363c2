using StableDiffusion;
using StableDiffusion.Cli;

return Cli.Run(args, Console.Out, Console.Error);
