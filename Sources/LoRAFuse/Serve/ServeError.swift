import Foundation

/// Why the serving layer refused or ended a request, with the HTTP status and the fields of
/// OpenAI's error object (`{"error": {"message", "type", "param", "code"}}`) it maps to. The
/// library has no HTTP in it; the server turns these into responses one to one.
public struct ServeError: Error, CustomStringConvertible, Equatable, Sendable {
    public var status: Int
    public var message: String
    /// OpenAI's `type`: invalid_request_error, authentication_error, not_found_error,
    /// rate_limit_error, server_error.
    public var type: String
    public var param: String?
    public var code: String?

    public init(status: Int, message: String, type: String, param: String? = nil, code: String? = nil) {
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
    }

    public var description: String { message }

    public static func invalid(_ message: String, param: String? = nil, code: String? = nil) -> ServeError {
        ServeError(status: 400, message: message, type: "invalid_request_error", param: param, code: code)
    }

    public static func notFound(_ message: String, param: String? = nil, code: String? = "model_not_found") -> ServeError {
        ServeError(status: 404, message: message, type: "not_found_error", param: param, code: code)
    }

    public static func busy(_ message: String, code: String = "rate_limit_exceeded") -> ServeError {
        ServeError(status: 429, message: message, type: "rate_limit_error", param: nil, code: code)
    }

    public static func conflict(_ message: String, param: String? = nil) -> ServeError {
        ServeError(status: 409, message: message, type: "invalid_request_error", param: param, code: "conflict")
    }

    public static func tooLarge(_ message: String) -> ServeError {
        ServeError(status: 413, message: message, type: "invalid_request_error", param: nil, code: "request_too_large")
    }

    public static func unauthorized(_ message: String) -> ServeError {
        ServeError(status: 401, message: message, type: "authentication_error", param: nil, code: "invalid_api_key")
    }

    /// 503: a request past the server's `--timeout` before it could start.
    public static func timedOut(_ message: String) -> ServeError {
        ServeError(status: 503, message: message, type: "server_error", param: nil, code: "timeout")
    }

    public static func server(_ message: String) -> ServeError {
        ServeError(status: 500, message: message, type: "server_error", param: nil, code: nil)
    }

    /// The OpenAI error document.
    public var json: [String: Any] {
        ["error": ["message": message, "type": type, "param": param as Any? ?? NSNull(), "code": code as Any? ?? NSNull()]]
    }

    /// Any error as a ServeError: itself, or a server error carrying its description (engine
    /// errors that reach a client are the server's fault, not the request's).
    public static func wrap(_ error: any Error) -> ServeError {
        if let e = error as? ServeError { return e }
        return .server("\(error)")
    }
}
