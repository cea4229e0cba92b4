<%@ page contentType="text/plain; charset=UTF-8" %>Hello from app ${initParam.version} at <%= request.getContextPath() %>
