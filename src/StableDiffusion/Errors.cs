namespace StableDiffusion;

/// <summary>
/// Base of every error the engine reports on purpose. The message is one line that names the
/// file, tensor, option or device at fault; the CLI prints it without a stack trace.
/// </summary>
public abstract class SdException : Exception
{
    protected SdException(string message, Exception? inner = null) : base(message, inner) { }

    /// <summary>Process exit code the CLI uses for this failure domain.</summary>
    public virtual int ExitCode => 1;
}

/// <summary>Bad command-line usage or an impossible request (unknown option, bad size).</summary>
public sealed class UsageException(string message, Exception? inner = null) : SdException(message, inner)
{
    public override int ExitCode => 2;
}

/// <summary>A device was asked for and is not there, or a device operation failed.</summary>
public sealed class DeviceException(string message, Exception? inner = null) : SdException(message, inner);

/// <summary>A weight file is missing, corrupt, hostile or does not match the model.</summary>
public sealed class WeightsException(string message, Exception? inner = null) : SdException(message, inner);

/// <summary>A configuration file or value is invalid.</summary>
public sealed class ConfigException(string message, Exception? inner = null) : SdException(message, inner);

/// <summary>A kernel launch was refused because its arguments do not fit (shape, range, dtype).</summary>
public sealed class KernelArgumentException(string message) : SdException(message);

/// <summary>An image file (init image, mask, output) is missing, too large, undecodable or cannot be written.</summary>
public sealed class ImageException(string message, Exception? inner = null) : SdException(message, inner);
