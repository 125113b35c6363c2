namespace StableDiffusion.Server;

/// <summary>An HTTP error answered as JSON <c>{"error": ..., "detail": ...}</c> with <see cref="Status"/>.</summary>
public sealed class ApiException(int status, string error, string detail) : Exception(error + ": " + detail)
{
    public int Status { get; } = status;
    public string Error { get; } = error;
    public string Detail { get; } = detail;

    public static ApiException BadRequest(string detail) => new(400, "bad request", detail);
    public static ApiException Invalid(string detail) => new(422, "invalid request", detail);
    public static ApiException NotFound(string detail) => new(404, "not found", detail);
}
